//! The one writer that owns the protocol output. There is no writer thread:
//! whichever thread has a message (the reader answering a cheap call, a VM
//! thread that finished an exec, a slow-pool thread) writes it itself, one
//! at a time, so a reply costs no thread wake-up on its way out.
//!
//! Back-pressure falls out of that: when the peer stops reading, the pipe
//! fills and the thread writing waits in `write`; the next one waits for its
//! turn holding its one message. So nothing queues in the worker beyond one
//! message per thread: the reader stops reading input (it waits for its turn
//! too, or, for calls answered elsewhere, while more than
//! [`BACKLOG_LIMIT`] bytes wait), a VM thread whose guest streams output
//! stops running the guest, and a pool thread stops taking work.
//!
//! A write error (the peer closed its end) makes the writer gone: later
//! messages are dropped, every waiter is released, and the session is told
//! once, so it can end.

use std::io::{self, IoSlice, Write};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::framing::Framing;

/// The reader stops reading new messages while more than this many bytes
/// of replies and notifications wait for their turn to be written (what
/// fits in the pipe itself is not counted: 64 KiB on Linux by default).
pub const BACKLOG_LIMIT: usize = 1 << 20;

/// The writer; shared by every thread of a session.
pub struct Writer {
    state: Mutex<State>,
    turn: Condvar,
    gone_hook: Box<dyn Fn() + Send + Sync>,
}

struct State {
    /// The output, while nobody is writing to it.
    out: Option<Box<dyn Write + Send>>,
    /// Bytes of messages waiting for their turn or being written.
    waiting: usize,
    /// The output failed: later messages are dropped.
    gone: bool,
}

impl Writer {
    /// A writer over `out`; `on_gone` runs once, when a write first fails.
    pub fn new(out: Box<dyn Write + Send>, on_gone: impl Fn() + Send + Sync + 'static) -> Writer {
        Writer {
            state: Mutex::new(State {
                out: Some(out),
                waiting: 0,
                gone: false,
            }),
            turn: Condvar::new(),
            gone_hook: Box::new(on_gone),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one message body with `framing`, waiting for its turn; false
    /// if the output is gone (the message is dropped).
    pub fn send(&self, framing: Framing, body: &[u8]) -> bool {
        self.send_after(framing, body, || {})
    }

    /// Like [`Writer::send`], running `first` once the message counts as
    /// waiting: whoever then sees its call finished also sees its answer
    /// still to be written (the session's end waits for both).
    pub fn send_after(&self, framing: Framing, body: &[u8], first: impl FnOnce()) -> bool {
        self.lock().waiting += body.len();
        first();
        let mut state = self.lock();
        let out = loop {
            if state.gone {
                state.waiting -= body.len();
                return false;
            }
            match state.out.take() {
                Some(out) => break out,
                None => state = self.turn.wait(state).unwrap_or_else(|e| e.into_inner()),
            }
        };
        drop(state);
        let mut out = out;
        let result = write_framed(&mut *out, framing, body).and_then(|()| out.flush());
        let mut state = self.lock();
        state.out = Some(out);
        state.waiting -= body.len();
        let failed = result.is_err() && !state.gone;
        if let Err(e) = &result {
            state.gone = true;
            if failed {
                tracing::warn!(error = %e, "output closed");
            }
        }
        drop(state);
        self.turn.notify_all();
        if failed {
            (self.gone_hook)();
        }
        result.is_ok()
    }

    /// Waits while more than [`BACKLOG_LIMIT`] bytes wait to be written
    /// (the reader calls this before reading each message).
    pub fn wait_for_room(&self) {
        let mut state = self.lock();
        while state.waiting > BACKLOG_LIMIT && !state.gone {
            state = self.turn.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits up to `limit` until nothing waits to be written; true if so.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        loop {
            if state.waiting == 0 || state.gone {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .turn
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Writes a whole frame with as few system calls as it takes: one `writev`
/// of header and body (LSP), or of body and newline (NDJSON).
fn write_framed(out: &mut dyn Write, framing: Framing, body: &[u8]) -> io::Result<()> {
    let header;
    let (first, second): (&[u8], &[u8]) = match framing {
        Framing::Lsp => {
            header = format!("Content-Length: {}\r\n\r\n", body.len());
            (header.as_bytes(), body)
        }
        Framing::Ndjson if body.contains(&b'\n') => {
            // Raw newlines can only be whitespace between JSON tokens
            // (strings escape theirs): write the body compacted instead.
            let value: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut line = serde_json::to_vec(&value)?;
            line.push(b'\n');
            return out.write_all(&line);
        }
        Framing::Ndjson => (body, b"\n"),
    };
    let mut parts = [IoSlice::new(first), IoSlice::new(second)];
    let mut bufs: &mut [IoSlice<'_>] = &mut parts;
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex as StdMutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<StdMutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            // One byte at a time: partial writes must be resumed.
            self.0.lock().unwrap().push(buf[0]);
            Ok(1)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frames_are_written_whole_in_both_framings() {
        let sink = Sink::default();
        let w = Writer::new(Box::new(sink.clone()), || {});
        assert!(w.send(Framing::Lsp, b"{}"));
        assert!(w.send(Framing::Ndjson, b"[1,\n2]"));
        assert!(w.send(Framing::Ndjson, b"{\"a\":\"b\"}"));
        assert_eq!(
            &*sink.0.lock().unwrap(),
            b"Content-Length: 2\r\n\r\n{}[1,2]\n{\"a\":\"b\"}\n"
        );
        assert!(w.wait_idle(Duration::ZERO));
    }

    #[test]
    fn a_failed_write_makes_the_writer_gone_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let w = Writer::new(Box::new(Broken), move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!w.send(Framing::Ndjson, b"{}"));
        assert!(!w.send(Framing::Ndjson, b"{}"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Nobody waits on a gone writer.
        w.wait_for_room();
        assert!(w.wait_idle(Duration::ZERO));
    }
}
