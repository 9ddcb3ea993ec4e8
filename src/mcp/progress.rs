//! Progress notifications, as the MCP spec defines them: only for a request
//! whose `_meta` carries a `progressToken`, with a `progress` value that grows
//! at every notification. Loading the session's template and an exec's output
//! are reported this way, so a host can show a long call moving.

use std::sync::atomic::{AtomicU64, Ordering};

use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::{Peer, RequestContext, RoleServer};
use tokio::sync::mpsc;

/// Largest part of one output chunk repeated in a progress message; the whole
/// output is in the tool's result.
const MAX_MESSAGE_BYTES: usize = 4096;

/// Reports the progress of one request (a no-op when the client asked for none).
pub(super) struct Progress {
    to: Option<(Peer<RoleServer>, ProgressToken)>,
    step: AtomicU64,
}

impl Progress {
    /// The reporter for the request of `ctx`.
    pub fn new(ctx: &RequestContext<RoleServer>) -> Progress {
        Progress {
            to: ctx
                .meta
                .get_progress_token()
                .map(|token| (ctx.peer.clone(), token)),
            step: AtomicU64::new(0),
        }
    }

    /// Sends one notification with `message`.
    pub async fn report(&self, message: impl Into<String>) {
        let Some((peer, token)) = &self.to else {
            return;
        };
        let step = self.step.fetch_add(1, Ordering::Relaxed) + 1;
        let param =
            ProgressNotificationParam::new(token.clone(), step as f64).with_message(message.into());
        // A client that went away cannot be told; the call itself goes on.
        if let Err(e) = peer.notify_progress(param).await {
            tracing::debug!(error = %e, "progress notification not sent");
        }
    }

    /// A sender for messages produced off the runtime (an exec's output on a
    /// blocking thread) and the task that forwards them; await the task after
    /// dropping the sender, so every notification precedes the result.
    pub fn forwarder(
        &self,
    ) -> Option<(
        mpsc::UnboundedSender<String>,
        impl std::future::Future<Output = ()> + '_,
    )> {
        self.to.as_ref()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        Some((tx, async move {
            while let Some(message) = rx.recv().await {
                self.report(message).await;
            }
        }))
    }
}

/// The part of `data` a progress message repeats: at most
/// [`MAX_MESSAGE_BYTES`], cut on a character boundary.
pub(super) fn excerpt(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.into_owned();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_bounded_and_cut_on_character_boundaries() {
        assert_eq!(excerpt(b"hi\n"), "hi\n");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = excerpt(long.as_bytes());
        assert!(cut.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt(&[0xff, b'a']), "\u{fffd}a");
    }
}
