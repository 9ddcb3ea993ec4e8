//! Where a call's answer goes, and the calls still running.
//!
//! A [`Reply`] travels with its call to whichever thread finishes it (the
//! reader, a VM thread, a slow-pool thread), which answers through it
//! exactly once: straight to the writer, into its slot of a batch, or
//! nowhere for a notification. A reply dropped unanswered still answers
//! (an internal error), so no peer waits forever on a call that was lost.
//!
//! [`Inflight`] holds the requests between being read and being answered:
//! `$/cancelRequest` finds them there, a second request with the id of one
//! still running is refused, and the end of a session waits for them.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jsonrpsee::types::ErrorObjectOwned;
use serde::Serialize;

use super::errors;
use super::framing::Framing;
use super::message::{self, Id};
use super::writer::Writer;
use crate::engine::CancelToken;

/// The requests running now, by id.
#[derive(Default)]
pub struct Inflight {
    calls: Mutex<HashMap<String, CancelToken>>,
    ended: Condvar,
}

impl Inflight {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, CancelToken>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a request; `None` if one with the same id is still running.
    fn register(&self, key: String) -> Option<CancelToken> {
        match self.lock().entry(key) {
            Entry::Occupied(_) => None,
            Entry::Vacant(v) => Some(v.insert(CancelToken::new()).clone()),
        }
    }

    fn unregister(&self, key: &str) {
        let mut calls = self.lock();
        calls.remove(key);
        if calls.is_empty() {
            self.ended.notify_all();
        }
    }

    /// Cancels the running request with this id, if any.
    pub fn cancel(&self, id: &Id) {
        match self.lock().get(&id.key()) {
            Some(token) => {
                tracing::debug!(id = id.raw().get(), "cancelling");
                token.cancel();
            }
            None => tracing::debug!(id = id.raw().get(), "cancel for no running call"),
        }
    }

    /// Requests running now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Waits up to `limit` for every running request to be answered; true
    /// if none is left.
    pub fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut calls = self.lock();
        while !calls.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            calls = self
                .ended
                .wait_timeout(calls, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// What a reply needs of its session.
pub struct Channel {
    /// The one writer.
    pub writer: Writer,
    /// The requests running now.
    pub inflight: Inflight,
}

/// Where one reply goes.
enum Slot {
    /// Its own message.
    Single,
    /// A place in a batch's answer.
    Batch(Arc<Batch>, usize),
    /// Nowhere: the call was a notification.
    Nowhere,
}

/// A batch's answers, written as one message once all are in.
pub struct Batch {
    framing: Framing,
    slots: Mutex<(Vec<Option<Vec<u8>>>, usize)>,
}

impl Batch {
    /// A batch expecting `n` answers.
    pub fn new(framing: Framing, n: usize) -> Arc<Batch> {
        Arc::new(Batch {
            framing,
            slots: Mutex::new((vec![None; n], n)),
        })
    }

    /// Puts one answer in; the last one writes the batch. `done` runs once
    /// the answer is in (and counts as waiting, for the last).
    fn fill(&self, channel: &Channel, index: usize, body: Vec<u8>, done: impl FnOnce()) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let (bodies, left) = &mut *slots;
        if bodies[index].replace(body).is_none() {
            *left -= 1;
        }
        if *left > 0 {
            drop(slots);
            return done();
        }
        let bodies: Vec<Vec<u8>> = bodies.drain(..).flatten().collect();
        drop(slots);
        channel
            .writer
            .send_after(self.framing, &message::batch(&bodies), done);
    }
}

/// The answer of one call, owed exactly once.
pub struct Reply {
    channel: Arc<Channel>,
    framing: Framing,
    id: Id,
    slot: Slot,
    /// Registered in [`Inflight`] under this key.
    key: Option<String>,
    cancel: CancelToken,
    answered: bool,
}

/// Sends notifications on behalf of a call (`sandbox.output`).
#[derive(Clone)]
pub struct Notifier {
    channel: Arc<Channel>,
    framing: Framing,
    id: Id,
}

impl Notifier {
    /// The id of the call the notifications are about.
    pub fn request(&self) -> &Id {
        &self.id
    }

    /// Sends a notification to the peer.
    pub fn notify(&self, method: &str, params: impl Serialize) {
        self.channel
            .writer
            .send(self.framing, &message::notification(method, params));
    }
}

impl Reply {
    /// The reply to request `id`, registered so it can be cancelled; `Err`
    /// with the refusal to send if a request with this id is still running.
    pub fn request(
        channel: &Arc<Channel>,
        framing: Framing,
        id: Id,
        batch: Option<(&Arc<Batch>, usize)>,
    ) -> Result<Reply, Reply> {
        let key = id.key();
        let registered = channel.inflight.register(key.clone());
        let reply = Reply {
            channel: Arc::clone(channel),
            framing,
            slot: match batch {
                Some((b, i)) => Slot::Batch(Arc::clone(b), i),
                None => Slot::Single,
            },
            cancel: registered.clone().unwrap_or_default(),
            key: registered.map(|_| key),
            id,
            answered: false,
        };
        if reply.key.is_some() {
            Ok(reply)
        } else {
            Err(reply)
        }
    }

    /// The reply to a message that is not a registered call (an invalid
    /// request, or a request refused before it runs).
    pub fn unregistered(
        channel: &Arc<Channel>,
        framing: Framing,
        id: Id,
        batch: Option<(&Arc<Batch>, usize)>,
    ) -> Reply {
        Reply {
            channel: Arc::clone(channel),
            framing,
            id,
            slot: match batch {
                Some((b, i)) => Slot::Batch(Arc::clone(b), i),
                None => Slot::Single,
            },
            key: None,
            cancel: CancelToken::new(),
            answered: false,
        }
    }

    /// The reply to a notification: the call runs, its answer goes nowhere.
    pub fn nowhere(channel: &Arc<Channel>, framing: Framing) -> Reply {
        Reply {
            channel: Arc::clone(channel),
            framing,
            id: Id::null(),
            slot: Slot::Nowhere,
            key: None,
            cancel: CancelToken::new(),
            answered: false,
        }
    }

    /// The id of the call.
    pub fn id(&self) -> &Id {
        &self.id
    }

    /// The call's cancel token (`$/cancelRequest` for its id).
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// A handle for the call's notifications.
    pub fn notifier(&self) -> Notifier {
        Notifier {
            channel: Arc::clone(&self.channel),
            framing: self.framing,
            id: self.id.clone(),
        }
    }

    /// Answers with a result.
    pub fn ok<T: Serialize + ?Sized>(mut self, result: &T) {
        let body = message::success(&self.id, result);
        self.send(body);
    }

    /// Answers with an error.
    pub fn err(mut self, error: ErrorObjectOwned) {
        let body = message::failure(&self.id, &error);
        self.send(body);
    }

    /// Answers with either.
    pub fn result<T: Serialize>(self, result: Result<T, ErrorObjectOwned>) {
        match result {
            Ok(v) => self.ok(&v),
            Err(e) => self.err(e),
        }
    }

    fn send(&mut self, body: Vec<u8>) {
        self.answered = true;
        // Forget the call once its answer counts as waiting to be written,
        // and before it leaves: a peer that reuses the id as soon as it reads
        // the answer must not be refused, and the end of the session, which
        // waits for calls and then for the output, must not miss it.
        let key = self.key.take();
        let inflight = &self.channel.inflight;
        let forget = || {
            if let Some(key) = key {
                inflight.unregister(&key);
            }
        };
        match &self.slot {
            Slot::Single => {
                self.channel.writer.send_after(self.framing, &body, forget);
            }
            Slot::Batch(batch, index) => batch.fill(&self.channel, *index, body, forget),
            Slot::Nowhere => forget(),
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.answered {
            tracing::error!(id = self.id.raw().get(), "a call ended without an answer");
            let body = message::failure(
                &self.id,
                &errors::internal("the call ended without an answer"),
            );
            self.send(body);
        }
    }
}
