//! The session: a reader thread that turns input into frames, a writer thread
//! that alone owns the output, and an async loop between them that classifies
//! each message and runs every request as its own task, so a long exec never
//! delays another call. The shape follows rust-analyzer's lsp-server.
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
//! "Answered" is best effort, bounded by a few seconds: a peer that stops
//! reading cannot hold the worker up.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use jsonrpsee::Methods;
use jsonrpsee::types::ErrorObjectOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc as tmpsc;
use tokio::task::JoinSet;

use super::errors;
use super::framing::{FrameError, FrameReader, Framing, write_frame};
use super::message::{self, Id, Incoming, Message};
use super::methods::{self, Call, State};
use super::params::CancelParams;
use crate::engine::CancelToken;

/// How long calls may run on after end of input before sandboxes are killed.
const EOF_GRACE: Duration = Duration::from_secs(2);
/// How long calls may take to answer once their sandboxes are killed.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long the writer may take to flush what is queued at the end.
const WRITER_GRACE: Duration = Duration::from_secs(5);
/// Input buffer size.
const READ_BUFFER: usize = 64 << 10;

/// The writer's queue; cheap to clone, never blocks (as lsp-server's).
#[derive(Clone)]
pub struct Outbox(mpsc::Sender<Out>);

enum Out {
    Frame(Framing, Box<RawValue>),
    Close,
}

impl Outbox {
    /// Queues one message; dropped silently once the writer is gone.
    pub fn send(&self, framing: Framing, body: Box<RawValue>) {
        let _ = self.0.send(Out::Frame(framing, body));
    }
}

enum Event {
    Frame(Framing, Vec<u8>),
    TooLarge(Framing, u64, usize),
    Fatal(Option<Framing>, FrameError),
    Eof,
}

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

struct Inflight {
    token: CancelToken,
    calls: usize,
}

/// What every request task shares.
struct Shared {
    methods: Methods,
    state: Arc<State>,
    inflight: Mutex<HashMap<String, Inflight>>,
    out: Outbox,
}

/// Runs a session over `input` and `output` until it ends; returns the exit code.
pub fn run(
    input: Box<dyn Read + Send>,
    output: Box<dyn Write + Send>,
    state: State,
    handle_signals: bool,
) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rpc")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return 1;
        }
    };
    let limit = state.max_message_bytes;
    let state = Arc::new(state);
    let (event_tx, event_rx) = tmpsc::channel(16);
    let (out_tx, out_rx) = mpsc::channel();
    // Resolved (or dropped) when the writer stops: Ok(None) after a clean
    // close, Ok(Some(e)) when the output failed.
    let (writer_tx, writer_rx) = tokio::sync::oneshot::channel();

    let spawned = std::thread::Builder::new()
        .name("rpc-reader".into())
        .spawn(move || read_loop(input, limit, event_tx))
        .and_then(|_| {
            std::thread::Builder::new()
                .name("rpc-writer".into())
                .spawn(move || {
                    let _ = writer_tx.send(write_loop(output, out_rx));
                })
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the I/O threads");
        return 1;
    }
    let shared = Arc::new(Shared {
        methods: methods::module(Arc::clone(&state)).into(),
        state,
        inflight: Mutex::new(HashMap::new()),
        out: Outbox(out_tx),
    });
    let code = runtime.block_on(session(shared, event_rx, writer_rx, handle_signals));
    // Blocking engine calls still unwinding must not hold the exit up.
    runtime.shutdown_background();
    code
}

fn read_loop(input: Box<dyn Read + Send>, limit: usize, events: tmpsc::Sender<Event>) {
    let mut frames = FrameReader::new(BufReader::with_capacity(READ_BUFFER, input), limit);
    loop {
        let event = match frames.read() {
            Ok(Some(body)) => Event::Frame(frames.framing().unwrap_or(Framing::Ndjson), body),
            Ok(None) => Event::Eof,
            Err(FrameError::TooLarge { length, limit }) => {
                Event::TooLarge(frames.framing().unwrap_or(Framing::Ndjson), length, limit)
            }
            Err(e) => Event::Fatal(frames.framing(), e),
        };
        let last = matches!(event, Event::Eof | Event::Fatal(..));
        if events.blocking_send(event).is_err() || last {
            return;
        }
    }
}

/// Writes queued messages until told to close; returns the error that
/// stopped it early, if any.
fn write_loop(output: Box<dyn Write + Send>, queue: mpsc::Receiver<Out>) -> Option<io::Error> {
    let mut out = BufWriter::with_capacity(64 << 10, output);
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Out::Frame(framing, body) => {
                    if let Err(e) = write_frame(&mut out, framing, body.get().as_bytes()) {
                        return Some(e);
                    }
                }
                Out::Close => {
                    if let Err(e) = out.flush() {
                        tracing::debug!(error = %e, "final flush failed");
                    }
                    return None;
                }
            }
            next = queue.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            return Some(e);
        }
    }
    None
}

async fn session(
    shared: Arc<Shared>,
    mut events: tmpsc::Receiver<Event>,
    mut writer_done: tokio::sync::oneshot::Receiver<Option<io::Error>>,
    handle_signals: bool,
) -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = if handle_signals {
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    } else {
        (None, None)
    };
    let mut tasks = JoinSet::new();
    let stop = loop {
        tokio::select! {
            event = events.recv() => {
                let event = event.unwrap_or(Event::Eof);
                if let Some(stop) = on_event(&shared, event, &mut tasks) {
                    break stop;
                }
            }
            _ = recv_signal(&mut term) => {
                tracing::info!("SIGTERM: shutting down");
                break Stop::Signal;
            }
            _ = recv_signal(&mut int) => {
                tracing::info!("SIGINT: shutting down");
                break Stop::Signal;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            stopped = &mut writer_done => {
                match stopped {
                    Ok(Some(e)) => tracing::warn!(error = %e, "output closed"),
                    _ => tracing::error!("the writer stopped unexpectedly"),
                }
                break Stop::WriterGone;
            }
        }
    };
    tracing::info!(?stop, "session ending");
    finish(&shared, stop, &mut tasks).await;
    if stop != Stop::WriterGone {
        shared.out.0.send(Out::Close).ok();
        if tokio::time::timeout(WRITER_GRACE, writer_done)
            .await
            .is_err()
        {
            tracing::warn!("output not drained in time; exiting anyway");
        }
    }
    stop.code()
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Kills every sandbox and lets running calls answer, within bounds.
async fn finish(shared: &Arc<Shared>, stop: Stop, tasks: &mut JoinSet<()>) {
    shared.state.shutting_down.store(true, Ordering::SeqCst);
    if stop == Stop::Eof && !tasks.is_empty() {
        let _ = tokio::time::timeout(EOF_GRACE, drain(tasks)).await;
    }
    if let Ok(engine) = shared.state.engine.clone() {
        let started = Instant::now();
        if let Err(e) = tokio::task::spawn_blocking(move || engine.shutdown()).await {
            tracing::error!(error = %e, "engine shutdown failed");
        }
        tracing::debug!(elapsed = ?started.elapsed(), "engine shut down");
    }
    if tokio::time::timeout(DRAIN_GRACE, drain(tasks))
        .await
        .is_err()
    {
        tracing::warn!(
            calls = tasks.len(),
            "calls still running at exit are dropped"
        );
        tasks.abort_all();
    }
}

async fn drain(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

fn on_event(shared: &Arc<Shared>, event: Event, tasks: &mut JoinSet<()>) -> Option<Stop> {
    match event {
        Event::Frame(framing, body) => on_message(shared, framing, &body, tasks),
        Event::TooLarge(framing, length, limit) => {
            tracing::warn!(length, limit, "message too large; skipped");
            let reply = message::failure(&Id::null(), &errors::message_too_large(length, limit));
            shared.out.send(framing, reply);
            None
        }
        Event::Fatal(framing, e) => {
            tracing::error!(error = %e, "unreadable input; the stream cannot be resynchronised, exiting");
            if let Some(framing) = framing {
                let err = errors::parse_error("framing", e.to_string());
                shared
                    .out
                    .send(framing, message::failure(&Id::null(), &err));
            }
            Some(Stop::Fatal)
        }
        Event::Eof => Some(Stop::Eof),
    }
}

fn on_message(
    shared: &Arc<Shared>,
    framing: Framing,
    body: &[u8],
    tasks: &mut JoinSet<()>,
) -> Option<Stop> {
    match message::parse(body) {
        Message::Single(item) => {
            let (reply, stop) = on_item(shared, framing, item);
            match reply {
                Some(Reply::Ready(body)) => shared.out.send(framing, body),
                Some(Reply::Pending(id, handle)) => {
                    let shared = Arc::clone(shared);
                    tasks.spawn(async move {
                        let body = settle(&id, handle).await;
                        shared.out.send(framing, body);
                    });
                }
                None => {}
            }
            stop
        }
        Message::Batch(items) => {
            let mut replies = Vec::new();
            let mut stop = None;
            for item in items {
                let (reply, s) = on_item(shared, framing, item);
                replies.extend(reply);
                stop = stop.or(s);
            }
            if !replies.is_empty() {
                let shared = Arc::clone(shared);
                tasks.spawn(async move {
                    let mut bodies = Vec::with_capacity(replies.len());
                    for reply in replies {
                        bodies.push(match reply {
                            Reply::Ready(body) => body,
                            Reply::Pending(id, handle) => settle(&id, handle).await,
                        });
                    }
                    shared.out.send(framing, message::batch(&bodies));
                });
            }
            stop
        }
    }
}

enum Reply {
    Ready(Box<RawValue>),
    Pending(Id, tokio::task::JoinHandle<Box<RawValue>>),
}

/// The reply of a spawned call; a panicked call still gets one.
async fn settle(id: &Id, handle: tokio::task::JoinHandle<Box<RawValue>>) -> Box<RawValue> {
    match handle.await {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, "a call panicked");
            message::failure(id, &errors::internal("the call failed unexpectedly"))
        }
    }
}

fn on_item(
    shared: &Arc<Shared>,
    framing: Framing,
    item: Incoming,
) -> (Option<Reply>, Option<Stop>) {
    match item {
        Incoming::Request { id, method, params } => {
            if shared.state.shutting_down.load(Ordering::SeqCst) {
                let body = message::failure(&id, &errors::shutting_down());
                return (Some(Reply::Ready(body)), None);
            }
            if method == "shutdown" {
                shared.state.shutting_down.store(true, Ordering::SeqCst);
            }
            let token = register(shared, &id);
            let handle = tokio::spawn(call(
                Arc::clone(shared),
                framing,
                id.clone(),
                method,
                params,
                Some(token),
            ));
            (Some(Reply::Pending(id, handle)), None)
        }
        Incoming::Notification { method, params } => {
            (None, on_notification(shared, framing, method, params))
        }
        Incoming::Invalid { id, error } => {
            tracing::warn!(error = %error.message(), "invalid message");
            (Some(Reply::Ready(message::failure(&id, &error))), None)
        }
        Incoming::Response => {
            tracing::warn!("ignoring a response: this worker sends no requests");
            (None, None)
        }
    }
}

fn on_notification(
    shared: &Arc<Shared>,
    framing: Framing,
    method: String,
    params: Option<Box<RawValue>>,
) -> Option<Stop> {
    match method.as_str() {
        "exit" => {
            let after_shutdown = shared.state.shutting_down.load(Ordering::SeqCst);
            return Some(Stop::Exit { after_shutdown });
        }
        "$/cancelRequest" => {
            let parsed = params
                .as_deref()
                .map(|p| serde_json::from_str::<CancelParams>(p.get()));
            match parsed {
                Some(Ok(p)) => match Id::from_raw(p.id) {
                    Some(id) => cancel(shared, &id),
                    None => tracing::warn!("$/cancelRequest with an invalid id"),
                },
                _ => tracing::warn!("$/cancelRequest without {{id}}"),
            }
        }
        m if m.starts_with("$/") => tracing::debug!(method = m, "ignoring notification"),
        m if shared.methods.method(m).is_some() => {
            if shared.state.shutting_down.load(Ordering::SeqCst) {
                tracing::debug!(method = m, "ignoring notification after shutdown");
            } else {
                if m == "shutdown" {
                    shared.state.shutting_down.store(true, Ordering::SeqCst);
                }
                // Runs like a request; its result has nowhere to go.
                tokio::spawn(call(
                    Arc::clone(shared),
                    framing,
                    Id::null(),
                    method,
                    params,
                    None,
                ));
            }
        }
        m => tracing::debug!(method = m, "ignoring unknown notification"),
    }
    None
}

fn cancel(shared: &Shared, id: &Id) {
    let inflight = shared.inflight.lock().unwrap_or_else(|e| e.into_inner());
    match inflight.get(&id.key()) {
        Some(call) => {
            tracing::debug!(id = id.raw().get(), "cancelling");
            call.token.cancel();
        }
        None => tracing::debug!(id = id.raw().get(), "cancel for no running call"),
    }
}

#[derive(Serialize)]
struct InternalRequest<'a> {
    jsonrpc: &'static str,
    id: u8,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InternalReply<'a> {
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    error: Option<ErrorObjectOwned>,
}

/// Runs one call through the jsonrpsee module and builds its reply.
async fn call(
    shared: Arc<Shared>,
    framing: Framing,
    id: Id,
    method: String,
    params: Option<Box<RawValue>>,
    registered: Option<CancelToken>,
) -> Box<RawValue> {
    let reply = run_call(&shared, framing, &id, &method, params, registered.clone()).await;
    if registered.is_some() {
        unregister(&shared, &id);
    }
    reply
}

async fn run_call(
    shared: &Shared,
    framing: Framing,
    id: &Id,
    method: &str,
    params: Option<Box<RawValue>>,
    token: Option<CancelToken>,
) -> Box<RawValue> {
    let started = Instant::now();
    if shared.methods.method(method).is_none() {
        return message::failure(id, &errors::method_not_found(method));
    }
    if params.as_ref().is_some_and(|p| p.get().starts_with('[')) {
        return message::failure(
            id,
            &errors::invalid_params("params must be an object: every method takes them by name"),
        );
    }
    let mut methods = shared.methods.clone();
    methods.extensions_mut().insert(Call {
        id: id.clone(),
        cancel: token.unwrap_or_default(),
        out: shared.out.clone(),
        framing,
    });
    let request = serde_json::to_string(&InternalRequest {
        jsonrpc: "2.0",
        id: 0,
        method,
        params: params.as_deref(),
    })
    .expect("a request serialises");
    let reply = match methods.raw_json_request(&request, 1).await {
        Ok((response, _)) => reshape(id, &response),
        Err(e) => message::failure(id, &errors::internal(e.to_string())),
    };
    tracing::debug!(method, id = id.raw().get(), elapsed = ?started.elapsed(), "call done");
    reply
}

/// Makes a call findable by `$/cancelRequest`, before it is spawned, so a
/// cancel read right after the request always finds it. Calls that share an
/// id share a token.
fn register(shared: &Shared, id: &Id) -> CancelToken {
    let mut inflight = shared.inflight.lock().unwrap_or_else(|e| e.into_inner());
    let entry = inflight.entry(id.key()).or_insert_with(|| Inflight {
        token: CancelToken::new(),
        calls: 0,
    });
    entry.calls += 1;
    entry.token.clone()
}

fn unregister(shared: &Shared, id: &Id) {
    let key = id.key();
    let mut inflight = shared.inflight.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = inflight.get_mut(&key) {
        entry.calls -= 1;
        if entry.calls == 0 {
            inflight.remove(&key);
        }
    }
}

/// Puts the peer's id on jsonrpsee's reply.
fn reshape(id: &Id, response: &RawValue) -> Box<RawValue> {
    match serde_json::from_str::<InternalReply<'_>>(response.get()) {
        Ok(InternalReply {
            error: Some(error), ..
        }) => message::failure(id, &error),
        Ok(InternalReply { result, .. }) => {
            let null = RawValue::from_string("null".into()).expect("null is JSON");
            message::success(id, result.unwrap_or(&null))
        }
        Err(e) => message::failure(id, &errors::internal(format!("unreadable reply: {e}"))),
    }
}
